"""The :class:`Server`: the listening socket, its connections and the dispatch.

One task reads each connection; every request runs in its own task, so
requests on one connection are in flight together and answered by ``id`` as
they finish. Events from the engine are pushed only to connections that
subscribed (``hello`` with ``events``; see :mod:`overlayd.subscriptions`).
How connections are accepted, bounded and read is in :mod:`overlayd.connections`;
who may connect, in :mod:`overlayd.server.access`; what each op does, in
:mod:`overlayd.server.handlers`.
"""

# ruff: noqa: E402  (the package's own imports follow the POSIX assert)

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from overlayd import protocol as p
from overlayd import socketfile
from overlayd.config import DaemonConfig
from overlayd.connections import MAX_ERR_MESSAGE
from overlayd.connections import Acceptor
from overlayd.connections import Connection
from overlayd.connections import Limits
from overlayd.connections import RateLimitedLog
from overlayd.connections import max_connections
from overlayd.connections import refuse_socket
from overlayd.engine import Engine
from overlayd.errors import OverlaydError
from overlayd.errors import clip
from overlayd.model import Event
from overlayd.observe import event_frame as observe_event_frame
from overlayd.subscriptions import Subscription
from overlayd.transport import framed

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest,
# so the server's own modules are imported after it.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

from overlayd.server import cni_exec
from overlayd.server.access import authorise
from overlayd.server.handlers import HANDLERS
from overlayd.server.rehearsal import rehearse
from overlayd.server.statuswire import StatusWire

__all__ = ["Server"]

#: Ops answered on the connection's own task when nothing else is in flight
#: there: they take no lock and do not wait for a driver (``status`` reads the
#: device at most once a second, from a worker thread), so a pipelined request
#: behind one waits at most that long, and a poller saves a task per request.
INLINE: frozenset[type[p.Request]] = frozenset({p.StatusRequest, p.HelloRequest})

# One logger for the whole server package, as when it was one module.
log = logging.getLogger("overlayd.server")


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
        self._acceptor: Acceptor | None = None
        #: One task per accepted client (authorising, serving or refusing it).
        self._clients: set[asyncio.Task[None]] = set()
        self._conns: set[Connection] = set()
        self._offload = asyncio.Semaphore(self.limits.offload_threads)
        self._limited_log = RateLimitedLog(log)
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._events_task: asyncio.Task[None] | None = None
        self._warm: asyncio.TimerHandle | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._allowed_gids = set(config.allowed_gids)
        self._allowed_uids = {0, os.getuid(), *config.allowed_uids}
        self._group_gid: int | None = None
        self._socket_file = socketfile.SocketFile(self.path, config.socket_group)
        self._listening = False
        self.requests_served = 0
        #: Of those, answered in the connection's fast lane (unchanged ``status``).
        self.fast_answers = 0
        #: The last answer encoded and its bytes (:meth:`_encode`).
        self._last_encoded: tuple[p.AnyResponse, bytes] | None = None
        #: ``status`` memo: the engine's last status, the answer built from it and
        #: that answer's encoding (``None``: encoded as any other answer).
        self.status_memo: tuple[Any, p.StatusResponse, bytes | None] | None = None
        self.status_wire = StatusWire()

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
        self._acceptor = Acceptor(self._listener, self._limited_log, self._accept)
        self._acceptor.start()
        self._events_task = asyncio.create_task(self._pump_events(), name="overlayd-events")
        # After the first answers, not before: the start-up is not slowed by it.
        self._warm = asyncio.get_running_loop().call_later(1.0, self._warm_up)
        log.info(
            "serving on %s (at most %d connections)",
            self.path,
            self.limits.max_connections,
            extra={"socket": str(self.path)},
        )

    def _warm_up(self) -> None:
        self._warm_task = asyncio.create_task(self.warm_up(), name="overlayd-warm-up")

    async def warm_up(self) -> None:
        """Do now what the first requests would do lazily; never fails.

        Run once, a second after the socket is served (so neither the start
        nor the first answers wait for it): the wire models are built and the
        CNI plugin is imported in a worker thread (both left for first use to
        keep the start short: ``defer_build``, a lazy import; about 50 ms all
        told), then the drivers' ``overlayd_warm_up`` runs on one of the
        engine's workers (the sockets and descriptors their first attach
        would open), and last the attach path's pure steps are rehearsed on
        a made-up workload (:mod:`overlayd.server.rehearsal`). Nothing on
        the host is created or changed. A failure is logged at debug level:
        it only leaves the cost to the first request.
        """

        def load() -> None:
            p.build_models()
            cni_exec.load_plugin()

        try:
            await asyncio.get_running_loop().run_in_executor(None, load)
            failures = await self.engine.run_blocking(self.engine.hooks.warm_up)
        except Exception as exc:  # noqa: BLE001 - best effort, see above
            log.debug("warming up for the first requests failed: %s", exc)
            return
        for failure in failures:
            log.debug("a driver's warm-up failed: %s", failure)
        try:
            done = await rehearse()
        except Exception as exc:  # noqa: BLE001 - best effort, as above
            log.debug("rehearsing the attach path failed: %s", exc)
            return
        log.debug(
            "rehearsed the attach path in %.1f ms (the plugin answered %s)",
            done.milliseconds,
            done.exit_code,
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
        if self._warm is not None:
            self._warm.cancel()
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task
        if self._acceptor is not None:
            self._acceptor.stop()
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

    def _accept(self, sock: socket.socket) -> None:
        """Serve a client just accepted (:class:`~overlayd.connections.Acceptor`), or refuse it."""
        if self._closing.is_set():
            sock.close()
            return
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
            return
        task = asyncio.create_task(self._serve(sock))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, sock: socket.socket) -> None:
        ok, who = authorise(sock, self._allowed_uids, self._allowed_gids)
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
        conn.fast = self._answer_unchanged_status
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
                if not conn.tasks and type(frame.request) in INLINE:
                    # Nothing else in flight on this connection and an op that
                    # takes no lock: answer it here, without a task of its own.
                    await self._answer(conn, frame, inline=True)
                else:
                    conn.spawn(self._answer(conn, frame), size)
        finally:
            if conn.tasks:
                await asyncio.wait(list(conn.tasks))
            self._conns.discard(conn)
            if conn.subscription is not None:
                await conn.subscription.close()
            await conn.close()

    async def _answer(
        self, conn: Connection, frame: p.RequestFrame, *, inline: bool = False
    ) -> None:
        request = frame.request
        started = time.perf_counter()  # for overlayd_ipc_* metrics (overlayd.stats)
        try:
            response = await self.dispatch(request)
        except OverlaydError as exc:
            response = p.ErrResponse(message=clip(str(exc), MAX_ERR_MESSAGE))
        except asyncio.CancelledError:
            if inline:  # the connection's own task is being cancelled: let it end
                raise
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
        await conn.answer(frame.id, response, self._encode)
        if isinstance(request, p.ShutdownRequest):
            self.request_stop()

    def _answer_unchanged_status(self, body: bytes) -> bytes | None:
        """The fast lane (:mod:`overlayd.connections`): a polled ``status``, answered at once.

        Only a ``status`` whose answer is the memo's (nothing changed, the
        peers' read still fresh: :meth:`Engine.status_unchanged
        <overlayd.engine.health.HealthMixin.status_unchanged>`) is answered
        here, from the encoded copy, with the metrics the ordinary path
        keeps; ``None`` hands the frame to the ordinary path, which answers
        everything else, errors included.
        """
        if b'"status"' not in body or self._closing.is_set():
            return None
        started = time.perf_counter()
        peeked = p.peek_bare_request(body)
        if peeked is None or type(peeked[1]) is not p.StatusRequest:
            return None
        memo = self.status_memo
        st = self.engine.status_unchanged()
        if st is None or memo is None or memo[0] is not st:
            return None
        response = memo[1]
        try:
            out = framed(p.response_body(peeked[0], self._encode(response)))
        except OverlaydError:
            return None
        self.requests_served += 1
        self.fast_answers += 1
        self.engine.stats.request_done("status", response.result, time.perf_counter() - started)
        return out

    def _encode(self, response: p.AnyResponse) -> bytes:
        """``response`` encoded, once for as long as handlers return the same object.

        A handler that answers from a memo (``status`` while nothing changed,
        :mod:`overlayd.server.handlers`) returns the very object it returned
        before, so comparing identity is enough; every other answer is a new
        object and is encoded as before.
        """
        last = self._last_encoded
        if last is not None and last[0] is response:
            return last[1]
        memo = self.status_memo
        if memo is not None and memo[1] is response and memo[2] is not None:
            return memo[2]
        encoded = p.encode_response(response)
        self._last_encoded = (response, encoded)
        return encoded

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
        handler = HANDLERS.get(type(request))
        if handler is None:
            return p.ErrResponse(message=f"op {request.op!r} is not supported by this overlayd")
        return await handler(self, request)


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
