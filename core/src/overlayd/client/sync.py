"""The blocking :class:`Client`: :class:`AsyncClient` on a private event loop.

Its op methods are not written again: :func:`_blocking` makes each from the
async method of the same name, with the same parameters and docstring, and
mypy sees the exact signature (``ParamSpec``). Its constructor takes
:class:`AsyncClient`'s arguments the same way (:func:`_arguments_of`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Generator
from collections.abc import Iterable
from typing import Any
from typing import Concatenate
from typing import ParamSpec
from typing import TypeVar

from overlayd.client.ops import AsyncClient
from overlayd.eventstream import SyncEventStream
from overlayd.protocol import AnyEvent
from overlayd.rawclient import BlockingClient
from overlayd.rawclient import ClientClosed

__all__ = ["Client"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_S = TypeVar("_S")


def _blocking(
    method: Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[Client, _P], _T]:
    """The blocking :class:`Client` method that runs ``method`` on the client's loop."""

    @functools.wraps(method)
    def run(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._run(method(self._async, *args, **kwargs))

    run.__qualname__ = f"Client.{method.__name__}"
    return run


def _arguments_of(
    cls: Callable[_P, object],
) -> Callable[[Callable[Concatenate[_S, ...], None]], Callable[Concatenate[_S, _P], None]]:
    """Type the decorated ``__init__(self, *args, **kwargs)`` with the parameters of ``cls``."""

    def decorate(init: Callable[Concatenate[_S, ...], None]) -> Callable[Concatenate[_S, _P], None]:
        # inspect.signature (help(), editors) follows __wrapped__ to cls's own __init__.
        return functools.update_wrapper(init, cls.__init__, assigned=(), updated=())

    return decorate


class Client(BlockingClient):
    """Blocking facade over :class:`AsyncClient` (same methods and arguments).

    It runs a private event loop in a daemon thread; do not call it from that
    loop's own callbacks. Close it (or use ``with``) to stop the thread.
    """

    @_arguments_of(AsyncClient)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The arguments are checked first: a bad one leaves no thread running.
        self._async = AsyncClient(*args, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="overlayd-client", daemon=True
        )
        self._thread.start()

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

    @property
    def address(self) -> str:
        return self._async.address

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

    connect = _blocking(AsyncClient.connect)
    call = _blocking(AsyncClient.call)
    hello = _blocking(AsyncClient.hello)
    set_local_node_id = _blocking(AsyncClient.set_local_node_id)
    set_local_wg_pubkey = _blocking(AsyncClient.set_local_wg_pubkey)
    setup_global_overlay = _blocking(AsyncClient.setup_global_overlay)
    teardown_global_overlay = _blocking(AsyncClient.teardown_global_overlay)
    setup_service_overlay = _blocking(AsyncClient.setup_service_overlay)
    teardown_service_overlay = _blocking(AsyncClient.teardown_service_overlay)
    allocate_ip = _blocking(AsyncClient.allocate_ip)
    release_ip = _blocking(AsyncClient.release_ip)
    attach_container = _blocking(AsyncClient.attach_container)
    detach_container = _blocking(AsyncClient.detach_container)
    add_peer = _blocking(AsyncClient.add_peer)
    remove_peer = _blocking(AsyncClient.remove_peer)
    add_allowed_ip = _blocking(AsyncClient.add_allowed_ip)
    remove_allowed_ip = _blocking(AsyncClient.remove_allowed_ip)
    register_dns = _blocking(AsyncClient.register_dns)
    unregister_dns = _blocking(AsyncClient.unregister_dns)
    status = _blocking(AsyncClient.status)
    nat_tick = _blocking(AsyncClient.nat_tick)
    nat_peer_candidates = _blocking(AsyncClient.nat_peer_candidates)
    shutdown = _blocking(AsyncClient.shutdown)
    apply_peers = _blocking(AsyncClient.apply_peers)
    list_attachments = _blocking(AsyncClient.list_attachments)
    attach_interface = _blocking(AsyncClient.attach_interface)
    list_leases = _blocking(AsyncClient.list_leases)
    gc = _blocking(AsyncClient.gc)
    reconcile = _blocking(AsyncClient.reconcile)
    cluster_status = _blocking(AsyncClient.cluster_status)
    map_port = _blocking(AsyncClient.map_port)
    unmap_port = _blocking(AsyncClient.unmap_port)
