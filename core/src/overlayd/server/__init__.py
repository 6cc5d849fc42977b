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

The package, by concern: :mod:`~overlayd.server.access` (who may connect),
:mod:`~overlayd.server.core` (the :class:`Server`: socket, connections,
subscriptions, dispatch), :mod:`~overlayd.server.handlers` (the handler table,
one function per op), :mod:`~overlayd.server.convert` (wire models to engine
models), :mod:`~overlayd.server.daemon` (:func:`run_daemon`: start, signals, stop).
"""

# ruff: noqa: E402  (the package's own imports follow the POSIX assert)

from __future__ import annotations

import sys

from overlayd import socketfile

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest,
# so the server's own modules are imported after it.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

from overlayd.server.core import Server
from overlayd.server.daemon import run_daemon

SocketInUse = socketfile.SocketInUse

__all__ = ["Server", "SocketInUse", "run_daemon"]
