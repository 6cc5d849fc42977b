"""The IPC server: ZLayer-compatible frames over a Unix socket, into the engine.

One task reads each connection; every request runs in its own task, so
requests on one connection are in flight together and answered by ``id`` as
they finish. Events from the engine are pushed only to connections that
subscribed (``hello`` with ``events``; see :mod:`overlayd.subscriptions`).

A frame that is valid JSON but not a valid request gets ``err`` (with its
``id`` when readable, else 0) and the connection stays open; a framing error
(oversize length, truncated body) closes the connection. Nothing a client
sends can stop the daemon. How connections are accepted, bounded and read
(the connection cap, back-pressure, large frames off the event loop) is in
:mod:`overlayd.connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from overlayd import __version__
from overlayd import protocol as p
from overlayd import socketfile
from overlayd.config import DaemonConfig
from overlayd.connections import MAX_ERR_MESSAGE
from overlayd.connections import Connection
from overlayd.connections import Limits
from overlayd.connections import RateLimitedLog
from overlayd.connections import accept_connections
from overlayd.connections import max_connections
from overlayd.connections import peer_credentials
from overlayd.connections import refuse_socket
from overlayd.engine import Engine
from overlayd.errors import ConfigError
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError
from overlayd.errors import clip
from overlayd.metrics import start_metrics
from overlayd.model import Attachment
from overlayd.model import Event
from overlayd.model import GuestManagedHandle
from overlayd.model import LinuxPidHandle
from overlayd.model import NatCandidate
from overlayd.model import NetnsHandle
from overlayd.model import OverlayMode
from overlayd.model import PeerChange
from overlayd.model import PeerScope
from overlayd.model import PortMapping
from overlayd.model import WindowsContainerHandle
from overlayd.model import handle_key
from overlayd.model import parse_cidr_list
from overlayd.observe import event_frame as observe_event_frame
from overlayd.subscriptions import Subscription

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

SocketInUse = socketfile.SocketInUse

__all__ = ["Server", "SocketInUse", "run_daemon"]

log = logging.getLogger(__name__)


def _cidrs(value: str | None) -> tuple[Any, ...]:
    return tuple(parse_cidr_list(value)) if value else ()


def _engine_handle(handle: p.AnyHandle) -> Any:
    """The engine's handle for a wire handle; values the wire allows but no
    workload can have (a pid of 2^22 or more, an empty id) are bad input."""
    try:
        if isinstance(handle, p.LinuxPidHandle):
            return LinuxPidHandle(pid=handle.pid)
        if isinstance(handle, p.WindowsContainerHandle):
            return WindowsContainerHandle.model_validate(handle.model_dump(exclude_none=True))
        if isinstance(handle, p.GuestManagedHandle):
            return GuestManagedHandle(id=handle.id)
        return NetnsHandle(
            path=handle.path,
            container_id=handle.container_id,
            ifname=handle.ifname,
            network=handle.network,
        )
    except ValidationError as exc:
        raise InvalidRequest(_handle_problem(handle, exc)) from None


def _handle_problem(handle: p.AnyHandle, exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"]) or "handle"
    if isinstance(handle, p.LinuxPidHandle):
        what = f"pid {handle.pid} is not a Linux process id (1 to {2**22 - 1})"
    elif error["type"] == "string_too_short":
        what = f"'{field}' is empty"
    elif error["type"] == "string_too_long":
        limit = (error.get("ctx") or {}).get("max_length")
        what = f"'{field}' is longer than {limit} characters"
    else:
        what = f"'{field}': {error['msg']}"
    return f"invalid {handle.platform} handle: {what}"


def _wire_handle(handle: Any) -> dict[str, Any]:
    return dict(handle.model_dump(mode="json", exclude_none=True))


def _scope(scope: p.AnyScope) -> PeerScope:
    if isinstance(scope, p.ServiceScope):
        return PeerScope(scope="service", service=scope.service)
    return PeerScope()


def _endpoint(value: str | None) -> str | None:
    return value or None


class Server:
    """Serve ``engine`` on ``config.socket``.

    Lifecycle: :meth:`claim` (refuse a live daemon, replace a stale socket,
    hold ``<socket>.lock``), :meth:`start` (listen), then
    :meth:`serve_until_stopped`, which returns after :meth:`request_stop`
    (signals, the ``shutdown`` op) and a graceful :meth:`close`.
    """

    def __init__(self, engine: Engine, config: DaemonConfig) -> None:
        self.engine = engine
        self.config = config
        self.path = Path(config.socket)
        self.limits = Limits(max_connections=max_connections(config.max_connections))
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        #: One task per accepted client (authorising, serving or refusing it).
        self._clients: set[asyncio.Task[None]] = set()
        self._conns: set[Connection] = set()
        self._offload = asyncio.Semaphore(self.limits.offload_threads)
        self._limited_log = RateLimitedLog(log)
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._events_task: asyncio.Task[None] | None = None
        self._allowed_gids = set(config.allowed_gids)
        self._allowed_uids = {0, os.getuid(), *config.allowed_uids}
        self._group_gid: int | None = None
        self._socket_file = socketfile.SocketFile(self.path, config.socket_group)
        self._listening = False
        self.requests_served = 0

    # -- socket -------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        """``<socket>.lock``: held (flock) for the daemon's whole life."""
        return self._socket_file.lock_path

    def claim(self) -> None:
        """Make the socket path ours, or raise :class:`SocketInUse` (see
        :meth:`overlayd.socketfile.SocketFile.claim`). Idempotent."""
        self._socket_file.claim()

    def _release_lock(self) -> None:
        self._socket_file.release()

    async def start(self) -> None:
        """Listen on the socket (mode 0660, group ``socket_group``/``zlayer``)."""
        self.claim()
        self._group_gid = self._socket_file.group_gid()
        if self._group_gid is not None:
            self._allowed_gids.add(self._group_gid)
        self._listener = self._socket_file.listen()
        self._listening = True
        self._accept_task = asyncio.create_task(self._accept_loop(), name="overlayd-accept")
        self._events_task = asyncio.create_task(self._pump_events(), name="overlayd-events")
        log.info(
            "serving on %s (at most %d connections)",
            self.path,
            self.limits.max_connections,
            extra={"socket": str(self.path)},
        )

    async def serve_until_stopped(self) -> None:
        await self._closing.wait()
        await self.close()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (signal handlers and the ``shutdown`` op call this)."""
        if not self._closing.is_set():
            log.info("shutting down")
        self._closing.set()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, answer every request already read, close everything.

        Requests read after the stop began are answered ``err`` (retry later);
        requests in flight get ``grace`` seconds to finish, then are cancelled
        and answered ``err``. The socket file and the lock are removed last.
        """
        if self._stopped.is_set():
            return
        self._closing.set()
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._listener is not None:
            self._listener.close()
        # Remove the path now: new clients get ENOENT/ECONNREFUSED at once.
        if self._listening:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        # Let readers pick up frames that were already sent before the stop.
        await asyncio.sleep(0.05)
        deadline = time.monotonic() + grace
        while True:
            pending = [t for c in self._conns for t in c.tasks]
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "cancelling %d request(s) still running after %.0fs", len(pending), grace
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=2.0)
                break
            log.info("waiting for %d in-flight request(s)", len(pending))
            await asyncio.wait(pending, timeout=remaining)
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
        for conn in list(self._conns):
            conn.writer.close()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2)
        self._release_lock()
        self._stopped.set()

    # -- connections --------------------------------------------------------

    def _authorised(self, sock: socket.socket) -> tuple[bool, str]:
        """Whether the peer may use the daemon, and who it is (for logs)."""
        try:
            creds = peer_credentials(sock)
        except OSError as exc:
            return False, f"a peer whose credentials are unreadable ({exc})"
        who = str(creds)
        if creds.uid in self._allowed_uids or creds.gid in self._allowed_gids:
            return True, who
        if not self._allowed_gids:
            return False, who
        groups = creds.groups
        if groups is None:
            # Neither SO_PEERGROUPS nor /proc answered: what /etc/group says.
            try:
                groups = frozenset(os.getgrouplist(_user_name(creds.uid), creds.gid))
            except (KeyError, OSError):
                groups = frozenset()
        return bool(groups & self._allowed_gids), who

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        async for sock in accept_connections(self._listener, self._limited_log):
            if self._closing.is_set():
                sock.close()
                continue
            cap = self.limits.max_connections
            if len(self._clients) >= cap:
                self._limited_log.warning(
                    "cap",
                    "refusing a connection: %d clients are connected (max_connections = %d)",
                    len(self._clients),
                    cap,
                )
                refuse_socket(
                    sock,
                    f"overlayd serves at most {cap} connections at once and all are in "
                    "use; close idle connections or raise max_connections, then retry",
                )
                continue
            task = asyncio.create_task(self._serve(sock))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _serve(self, sock: socket.socket) -> None:
        ok, who = self._authorised(sock)
        if not ok:
            self._limited_log.warning(
                f"refused {who}",
                "refused connection from %s: not root, the daemon's user, nor an allowed uid/gid",
                who,
                peer=who,
            )
            refuse_socket(
                sock,
                f"permission denied: {who} may not use this overlayd; add the "
                "uid to allowed_uids or the user to the socket's group",
            )
            return
        try:
            conn = await Connection.from_socket(sock, who, self.limits, self._offload)
        except OSError as exc:
            log.debug("connection from %s failed at once: %s", who, exc)
            sock.close()
            return
        self._conns.add(conn)
        log.debug("connection from %s", who)
        try:
            async for frame, size in conn.requests():
                if self._closing.is_set():
                    await conn.send_quietly(
                        p.ResponseFrame.err(
                            frame.id,
                            f"overlayd is shutting down and did not run {frame.request.op}; "
                            "retry once it is back",
                        )
                    )
                    continue
                conn.spawn(self._answer(conn, frame), size)
        finally:
            if conn.tasks:
                await asyncio.wait(list(conn.tasks))
            self._conns.discard(conn)
            if conn.subscription is not None:
                await conn.subscription.close()
            await conn.close()

    async def _answer(self, conn: Connection, frame: p.RequestFrame) -> None:
        request = frame.request
        started = time.perf_counter()  # for overlayd_ipc_* metrics (overlayd.stats)
        try:
            response = await self.dispatch(request)
        except OverlaydError as exc:
            response = p.ErrResponse(message=clip(str(exc), MAX_ERR_MESSAGE))
        except asyncio.CancelledError:
            response = p.ErrResponse(
                message=f"overlayd is shutting down and cancelled {request.op}; "
                "it may have been partly applied, check with status and retry"
            )
        except Exception as exc:  # the daemon must survive any bug
            log.exception("internal error in %s", request.op)
            response = p.ErrResponse(
                message=clip(
                    f"internal error in {request.op}: {type(exc).__name__}: {exc}; "
                    "this is a bug in overlayd, please report it with the daemon's log",
                    MAX_ERR_MESSAGE,
                )
            )
        if isinstance(request, p.HelloRequest) and isinstance(response, p.HelloResponse):
            response = self._subscribe(conn, request, response)
        self.requests_served += 1
        self.engine.stats.request_done(request.op, response.result, time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s", request.op, response.result, extra={"peer": conn.peer})
        await conn.send_quietly(p.ResponseFrame(id=frame.id, response=response))
        if isinstance(request, p.ShutdownRequest):
            self.request_stop()

    def _subscribe(
        self, conn: Connection, request: p.HelloRequest, response: p.HelloResponse
    ) -> p.HelloResponse:
        """Apply ``hello``'s ``events`` to the connection; report its subscription."""
        if request.events is not None:
            if conn.subscription is None and request.events:
                conn.subscription = Subscription(conn.peer, conn.send)
                conn.subscription.start()
            if conn.subscription is not None:
                conn.subscription.kinds = frozenset(request.events)
        sub = conn.subscription
        if request.events is None and sub is None:
            return response
        return response.model_copy(
            update={
                "events": sorted(sub.kinds) if sub is not None else [],
                "events_dropped": sub.dropped if sub is not None else 0,
            }
        )

    async def _pump_events(self) -> None:
        # Unbounded: this pump never waits for a client, it only hands events on.
        queue = self.engine.subscribe(maxsize=0)
        try:
            while True:
                event = await queue.get()
                frame = _event_frame(event)
                if frame is None:
                    continue
                log.info(
                    "event %s",
                    event.event,
                    extra={"pubkey": event.pubkey, "clients": len(self._conns)},
                )
                # Offer, never wait: a subscriber that does not read loses
                # events, not its connection, and holds up no one else.
                for conn in list(self._conns):
                    if conn.subscription is not None:
                        conn.subscription.offer(frame)
        finally:
            self.engine.unsubscribe(queue)

    # -- dispatch -----------------------------------------------------------

    #: Cluster mode of this daemon (``[cluster]``), set by :func:`run_daemon`.
    cluster: Any = None

    async def dispatch(self, request: p.AnyRequest) -> p.AnyResponse:
        handler = _HANDLERS.get(type(request))
        if handler is None:
            return p.ErrResponse(message=f"op {request.op!r} is not supported by this overlayd")
        return await handler(self, request)


def _user_name(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name


def _event_frame(event: Event) -> p.EventFrame | None:
    if event.event == "peer_health_changed" and event.healthy is not None:
        return p.EventFrame(
            event=p.PeerHealthChangedEvent(pubkey=event.pubkey, healthy=event.healthy)
        )
    if event.event == "nat_endpoint_changed" and event.endpoint:
        return p.EventFrame(
            event=p.NatEndpointChangedEvent(pubkey=event.pubkey, endpoint=event.endpoint)
        )
    return observe_event_frame(event)  # attach/detach/reconcile events (overlayd.observe)


# ---------------------------------------------------------------------------
# handlers: one per op, protocol model in, protocol model out
# ---------------------------------------------------------------------------

_Handler = Callable[[Server, Any], Awaitable[p.AnyResponse]]
_HANDLERS: dict[type, _Handler] = {}


def _handles(cls: type) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        _HANDLERS[cls] = fn
        return fn

    return register


@_handles(p.SetLocalNodeIdRequest)
async def _set_node_id(s: Server, r: p.SetLocalNodeIdRequest) -> p.AnyResponse:
    await s.engine.set_local_node_id(r.node_id)
    return p.OkResponse()


@_handles(p.SetLocalWgPubkeyRequest)
async def _set_pubkey(s: Server, r: p.SetLocalWgPubkeyRequest) -> p.AnyResponse:
    await s.engine.set_local_wg_pubkey(r.pubkey)
    return p.OkResponse()


@_handles(p.SetupGlobalOverlayRequest)
async def _setup_global(s: Server, r: p.SetupGlobalOverlayRequest) -> p.AnyResponse:
    name = await s.engine.setup_global_overlay(
        deployment=r.deployment,
        instance_id=r.instance_id,
        cluster_cidr=r.cluster_cidr,
        slice_cidr=r.slice_cidr,
        wg_port=r.wg_port,
        nat_enabled=r.nat_enabled,
    )
    return p.BridgeNameResponse(name=name)


@_handles(p.TeardownGlobalOverlayRequest)
async def _teardown_global(s: Server, r: p.TeardownGlobalOverlayRequest) -> p.AnyResponse:
    await s.engine.teardown_global_overlay()
    return p.OkResponse()


@_handles(p.SetupServiceOverlayRequest)
async def _setup_service(s: Server, r: p.SetupServiceOverlayRequest) -> p.AnyResponse:
    svc = await s.engine.setup_service_overlay(r.service, OverlayMode(r.mode))
    ded = svc.dedicated
    return p.ServiceOverlayResponse(
        name=svc.bridge.name,
        mode=svc.mode.value,
        wg_public_key=ded.public_key if ded else None,
        wg_port=ded.listen_port if ded else None,
        overlay_ip=str(svc.overlay_ip) if ded and svc.overlay_ip else None,
        subnet=str(svc.subnet),
    )


@_handles(p.TeardownServiceOverlayRequest)
async def _teardown_service(s: Server, r: p.TeardownServiceOverlayRequest) -> p.AnyResponse:
    await s.engine.teardown_service_overlay(r.service)
    return p.OkResponse()


@_handles(p.AllocateIpRequest)
async def _allocate(s: Server, r: p.AllocateIpRequest) -> p.AnyResponse:
    ip = await s.engine.allocate_ip(r.service, r.join_global)
    return p.IpResponse(ip=str(ip))


@_handles(p.ReleaseIpRequest)
async def _release(s: Server, r: p.ReleaseIpRequest) -> p.AnyResponse:
    await s.engine.release_ip(r.ip)
    return p.OkResponse()


@_handles(p.AttachContainerRequest)
async def _attach(s: Server, r: p.AttachContainerRequest) -> p.AnyResponse:
    att = await s.engine.attach(
        _engine_handle(r.handle),
        r.service,
        join_global=r.join_global,
        dns_server=r.dns_server,
        dns_domain=r.dns_domain,
    )
    if att.guest is not None:
        g = att.guest
        return p.GuestConfigResponse(
            overlay_ip=str(g.overlay_ip),
            prefix_len=g.prefix_len,
            private_key=g.private_key,
            public_key=g.public_key,
            listen_port=g.listen_port,
            peers=[
                p.PeerSpec(
                    public_key=peer.public_key,
                    endpoint=peer.endpoint or "",
                    allowed_ips=",".join(str(n) for n in peer.allowed_ips),
                    persistent_keepalive_secs=peer.persistent_keepalive_secs,
                )
                for peer in g.peers
            ],
            dns_server=str(g.dns_server) if g.dns_server else None,
            dns_domain=g.dns_domain,
        )
    return p.AttachedResponse(ip=str(att.ip), namespace_guid=att.namespace_guid)


@_handles(p.DetachContainerRequest)
async def _detach(s: Server, r: p.DetachContainerRequest) -> p.AnyResponse:
    await s.engine.detach(_engine_handle(r.handle))
    return p.OkResponse()


@_handles(p.AddPeerRequest)
async def _add_peer(s: Server, r: p.AddPeerRequest) -> p.AnyResponse:
    await s.engine.add_peer(
        r.public_key,
        _endpoint(r.endpoint),
        r.allowed_ips,
        int(r.persistent_keepalive_secs),
        _scope(r.scope),
    )
    return p.OkResponse()


@_handles(p.RemovePeerRequest)
async def _remove_peer(s: Server, r: p.RemovePeerRequest) -> p.AnyResponse:
    await s.engine.remove_peer(r.pubkey, _scope(r.scope))
    return p.OkResponse()


@_handles(p.AddAllowedIpRequest)
async def _add_allowed(s: Server, r: p.AddAllowedIpRequest) -> p.AnyResponse:
    await s.engine.add_allowed_ip(r.pubkey, r.cidr, _scope(r.scope))
    return p.OkResponse()


@_handles(p.RemoveAllowedIpRequest)
async def _remove_allowed(s: Server, r: p.RemoveAllowedIpRequest) -> p.AnyResponse:
    await s.engine.remove_allowed_ip(r.pubkey, r.cidr, _scope(r.scope))
    return p.OkResponse()


@_handles(p.RegisterDnsRequest)
async def _register_dns(s: Server, r: p.RegisterDnsRequest) -> p.AnyResponse:
    await s.engine.register_dns(r.name, r.ip)
    return p.OkResponse()


@_handles(p.UnregisterDnsRequest)
async def _unregister_dns(s: Server, r: p.UnregisterDnsRequest) -> p.AnyResponse:
    await s.engine.unregister_dns(r.name)
    return p.OkResponse()


@_handles(p.StatusRequest)
async def _status(s: Server, r: p.StatusRequest) -> p.AnyResponse:
    st = await s.engine.status()
    return p.StatusResponse(
        interface=st.interface,
        node_ip=str(st.node_ip) if st.node_ip else None,
        public_key=st.public_key,
        overlay_cidr=str(st.overlay_cidr) if st.overlay_cidr else None,
        slice_cidr=str(st.slice_cidr) if st.slice_cidr else None,
        peer_count=st.peer_count,
        service_count=st.service_count,
        peers=[
            p.PeerStatus(
                public_key=peer.public_key,
                endpoint=peer.endpoint or "",
                allowed_ips=",".join(str(n) for n in peer.allowed_ips),
                last_handshake_unix_secs=peer.last_handshake_unix_secs,
                rx_bytes=peer.rx_bytes,  # extension: traffic, for overlayctl topology
                tx_bytes=peer.tx_bytes,
            )
            for peer in st.peers
        ],
        dedicated_services=[
            p.DedicatedServiceStatus(
                service=d.service,
                interface=d.interface,
                public_key=d.public_key,
                listen_port=d.listen_port,
                overlay_ip=str(d.overlay_ip),
                subnet=str(d.subnet),
                peer_count=d.peer_count,
            )
            for d in st.dedicated_services
        ],
        nat=_nat_status(st.nat),
    )


def _nat_candidate_info(c: NatCandidate) -> p.NatCandidateInfo:
    return p.NatCandidateInfo(
        kind=c.kind,
        endpoint=c.endpoint,
        priority=c.priority or None,
        guessed=True if c.guessed else None,
    )


def _nat_status(nat: Any) -> p.NatStatusInfo | None:
    """``status.nat`` from :class:`overlayd.nat.host.NatStatus`."""
    if nat is None:
        return None
    return p.NatStatusInfo(
        candidates=[_nat_candidate_info(c) for c in nat.candidates],
        peers=[
            p.NatPeerPathInfo(
                public_key=peer.public_key,
                path=peer.path,
                endpoint=peer.endpoint,
                candidates=[_nat_candidate_info(c) for c in peer.candidates],
            )
            for peer in nat.peers
        ],
        warnings=list(nat.warnings),
    )


@_handles(p.NatPeerCandidatesRequest)
async def _nat_peer_candidates(s: Server, r: p.NatPeerCandidatesRequest) -> p.AnyResponse:
    await s.engine.nat_peer_candidates(
        r.public_key,
        [
            NatCandidate(
                kind=c.kind,
                endpoint=c.endpoint,
                priority=c.priority or 0,
                guessed=bool(c.guessed),
            )
            for c in r.candidates
        ],
    )
    return p.OkResponse()


@_handles(p.NatTickRequest)
async def _nat_tick(s: Server, r: p.NatTickRequest) -> p.AnyResponse:
    await s.engine.nat_tick()
    return p.OkResponse()


@_handles(p.ShutdownRequest)
async def _shutdown(s: Server, r: p.ShutdownRequest) -> p.AnyResponse:
    # Answer first; _answer then starts the graceful stop. The data plane stays up.
    return p.OkResponse()


@_handles(p.HelloRequest)
async def _hello(s: Server, r: p.HelloRequest) -> p.AnyResponse:
    drivers = [
        p.DriverDescription(
            name=info.name,
            api=info.api,
            platforms=sorted(info.platforms),
            capabilities=sorted(c.value for c in info.capabilities),
        )
        for info in s.engine.describe_drivers()
    ]
    return p.HelloResponse(
        protocol_version=p.PROTOCOL_VERSION,
        server_version=__version__,
        drivers=drivers,
        ops=list(p.ALL_OPS),
    )


@_handles(p.ApplyPeersRequest)
async def _apply_peers(s: Server, r: p.ApplyPeersRequest) -> p.AnyResponse:
    from overlayd.engine import _build_change

    changes: list[PeerChange] = []
    for ch in r.changes:
        kwargs: dict[str, Any] = {"public_key": ch.public_key, "remove": bool(ch.remove)}
        if ch.endpoint:
            kwargs["endpoint"] = ch.endpoint
        if ch.persistent_keepalive_secs is not None:
            kwargs["keepalive"] = ch.persistent_keepalive_secs
        if ch.allowed_ips is not None:
            kwargs["allowed_ips"] = ch.allowed_ips
        kwargs["add_allowed_ips"] = _cidrs(ch.add_allowed_ips)
        kwargs["remove_allowed_ips"] = _cidrs(ch.remove_allowed_ips)
        changes.append(_build_change(**kwargs))
    await s.engine.apply_peers(changes, _scope(r.scope))
    return p.OkResponse()


def _attachment_info(s: Server, a: Attachment) -> p.AttachmentInfo:
    svc = s.engine.services.get(a.service)
    nameservers, domain = s.engine.resolver(a.service) if svc is not None else ([], None)
    return p.AttachmentInfo.model_validate(
        {
            "handle": _wire_handle(a.handle),
            "service": a.service,
            "ip": str(a.ip),
            "global_ip": str(a.global_ip) if a.global_ip else None,
            "namespace_guid": a.namespace_guid,
            "interfaces": list(a.interfaces),
            "driver": a.driver,
            "created_unix_secs": a.created_unix_secs,
            "detaching": True if a.key in s.engine.detaching else None,
            "ifname": a.ifname,
            "mac": a.mac,
            "prefix_len": svc.subnet.prefixlen if svc is not None else None,
            "gateway": str(svc.gateway) if svc is not None else None,
            "routes": [str(n) for n in a.routes] or None,
            "mtu": a.mtu,
            "dns_servers": [str(n) for n in nameservers] or None,
            "dns_domain": domain,
        }
    )


@_handles(p.ListAttachmentsRequest)
async def _list_attachments(s: Server, r: p.ListAttachmentsRequest) -> p.AnyResponse:
    if r.handle is not None:
        one = s.engine.attachments.get(handle_key(_engine_handle(r.handle)))
        found = [one] if one is not None and r.service in (None, one.service) else []
    else:
        found = s.engine.list_attachments(r.service)
    return p.AttachmentsResponse(attachments=[_attachment_info(s, a) for a in found])


@_handles(p.AttachInterfaceRequest)
async def _attach_interface(s: Server, r: p.AttachInterfaceRequest) -> p.AnyResponse:
    if isinstance(r.handle, p.GuestManagedHandle):
        raise InvalidRequest(
            "attach_interface cannot attach a guest_managed handle (its answer would "
            "lose the guest's keys); use attach_container"
        )
    if r.create_mode is not None and r.service not in s.engine.services:
        await s.engine.setup_service_overlay(r.service, r.create_mode)
    att = await s.engine.attach(
        _engine_handle(r.handle),
        r.service,
        join_global=bool(r.join_global),
        dns_server=r.dns_server,
        dns_domain=r.dns_domain,
        default_route=r.default_route is not False,
    )
    return p.AttachmentResponse(attachment=_attachment_info(s, att))


@_handles(p.ListLeasesRequest)
async def _list_leases(s: Server, r: p.ListLeasesRequest) -> p.AnyResponse:
    return p.LeasesResponse(
        leases=[
            p.LeaseInfo(
                ip=str(lease.ip),
                pool=lease.pool,
                owner=lease.owner,
                created_unix_secs=lease.created_unix_secs,
            )
            for lease in s.engine.list_leases(r.pool)
        ]
    )


@_handles(p.GcRequest)
async def _gc(s: Server, r: p.GcRequest) -> p.AnyResponse:
    report = await s.engine.gc(
        [_engine_handle(h) for h in r.live], dry_run=bool(r.dry_run), network=r.network
    )
    return p.GcReportResponse.model_validate(
        {"released": [_wire_handle(h) for h in report.released], "kept": report.kept}
    )


@_handles(p.ReconcileRequest)
async def _reconcile(s: Server, r: p.ReconcileRequest) -> p.AnyResponse:
    summary = await s.engine.reconcile()
    return p.ReconcileReportResponse(
        adopted=summary.adopted,
        recreated=summary.recreated,
        removed=summary.removed,
        released=summary.released,
        errors=list(summary.errors),
    )


def _port_mapping(r: p.MapPortRequest | p.UnmapPortRequest) -> PortMapping:
    return PortMapping(
        protocol=r.protocol,
        host_port=r.host_port,
        container_ip=ipaddress.ip_address(r.container_ip),
        container_port=r.container_port,
        host_ip=ipaddress.ip_address(r.host_ip) if r.host_ip else None,
    )


@_handles(p.MapPortRequest)
async def _map_port(s: Server, r: p.MapPortRequest) -> p.AnyResponse:
    await s.engine.add_port_mapping(_port_mapping(r))
    return p.OkResponse()


@_handles(p.UnmapPortRequest)
async def _unmap_port(s: Server, r: p.UnmapPortRequest) -> p.AnyResponse:
    await s.engine.remove_port_mapping(_port_mapping(r))
    return p.OkResponse()


@_handles(p.ClusterStatusRequest)
async def _cluster_status(s: Server, r: p.ClusterStatusRequest) -> p.AnyResponse:
    if s.cluster is None:
        return p.ErrResponse(
            message="cluster mode is not enabled on this node "
            "(its configuration has no [cluster] table)"
        )
    response: p.AnyResponse = await s.cluster.status()
    return response


# ---------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------


def _sd_notify(message: str) -> None:
    """Tell systemd we are ready (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


def _late_signal(sig: int) -> None:
    log.info("%s received while already stopping", signal.Signals(sig).name)


async def run_daemon(config: DaemonConfig, *, engine: Engine | None = None) -> int:
    """Run overlayd until SIGTERM/SIGINT or a ``shutdown`` request. Returns the exit code.

    :raises SocketInUse: another daemon serves on ``config.socket``.
    :raises OverlaydError: the engine or a driver could not start.
    """
    # [cluster]: cluster mode (overlayd.cluster); None in orchestrated mode.
    from overlayd.cluster.daemon import cluster_mode

    cluster = cluster_mode(config)
    if engine is None:
        plugins: list[object] = list(cluster.plugins()) if cluster else []
        if config.dns.enabled:
            try:
                from overlayd.dns.plugin import DnsPlugin
            except ImportError as exc:
                raise ConfigError(
                    f"the built-in DNS server is not available ({exc}); "
                    "set `[dns] enabled = false` or run `overlayd serve --no-dns`"
                ) from exc
            plugins.append(DnsPlugin(config.dns))
        engine = Engine(config, plugins=plugins)
    elif cluster is not None:  # [cluster] with an engine built by the caller
        for plugin in cluster.plugins():
            engine.pm.register(plugin)
    server = Server(engine, config)
    # Claim the socket before touching the host: a second daemon must not
    # reconcile (and so disturb) what the first one owns.
    server.claim()
    loop = asyncio.get_running_loop()
    try:
        await engine.start()
        # From the moment the socket accepts, a client may see the daemon and
        # a SIGTERM must be a graceful stop, so the handlers come first.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        try:
            if cluster is not None:  # [cluster]: join in the background
                await cluster.start(engine)
                server.cluster = cluster
            await server.start()
            metrics = start_metrics(config.metrics, engine)  # [metrics] (overlayd.metrics)
        except BaseException:
            await server.close()
            if cluster is not None:
                await cluster.stop()
            await engine.stop()
            raise
    except BaseException:
        server._release_lock()
        raise
    _sd_notify(f"READY=1\nSTATUS=serving on {config.socket}\nMAINPID={os.getpid()}")
    log.info(
        "overlayd %s ready (drivers: %s, data_dir: %s)",
        __version__,
        ", ".join(config.drivers) or "none",
        config.data_dir or "in memory",
        extra={"socket": str(config.socket), "pid": os.getpid()},
    )
    try:
        await server.serve_until_stopped()
    finally:
        _sd_notify("STOPPING=1")
        if metrics is not None:  # [metrics]
            metrics.stop()
        try:
            await server.close()
        finally:
            if cluster is not None:  # [cluster]
                await cluster.stop()
            await engine.stop()
            # A further SIGTERM while the process winds down must not kill it with
            # the default action (exit status -15): keep a handler installed; the
            # loop's close() removes it.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, _late_signal, sig)
    log.info("overlayd stopped after %d request(s)", server.requests_served)
    return 0
