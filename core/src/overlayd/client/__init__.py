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

The package: :mod:`~overlayd.client.base` (the connection, :meth:`call
<AsyncClient.call>` and events), :mod:`~overlayd.client.ops` (:class:`AsyncClient`,
one method per op), :mod:`~overlayd.client.sync` (:class:`Client`, its blocking
methods made from the async ones).
"""

from __future__ import annotations

from overlayd.client.ops import AsyncClient
from overlayd.client.sync import Client
from overlayd.eventstream import EventStream
from overlayd.eventstream import SyncEventStream
from overlayd.rawclient import ClientClosed
from overlayd.rawclient import ConnectError
from overlayd.rawclient import ConnectionLost
from overlayd.rawclient import RawClient
from overlayd.rawclient import RemoteError
from overlayd.rawclient import RequestTimeout
from overlayd.rawclient import UnexpectedResponse

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
