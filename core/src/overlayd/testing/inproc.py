"""An overlayd daemon inside the test's own process and event loop.

:class:`InProcDaemon` runs the real :class:`~overlayd.server.Server` over a
real :class:`~overlayd.engine.Engine` on a Unix socket under a directory the
test owns, so clients talk to it exactly as an orchestrator does, while the
test can still reach the engine and the driver instances it handed in. It
can stop and start again over the same data directory, as a daemon restart
does. For a daemon in its own process (signals, crashes, the command line)
use :func:`overlayd.testing.daemon.start_daemon` instead.

Drivers come from ``make_drivers``, called at every start (a restart gets
fresh instances, as a new process would); without it the engine loads the
drivers the configuration names. Core never imports a driver itself: the
test passes, for example, ``lambda: [FakeDriver()]``.

The ``inproc_daemon`` fixture of the overlayd pytest plugin gives one that
is stopped, and its directory removed, even when the test fails.
"""

# ruff: noqa: E402  (the server's import follows the POSIX assert)

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from overlayd.client import AsyncClient
from overlayd.config import DaemonConfig
from overlayd.engine import Engine

# The daemon serves a Unix socket: POSIX only, as overlayd.server itself (the
# assert also makes mypy --platform win32 skip the rest of the module).
assert sys.platform != "win32", "the in-process daemon is not supported on Windows yet"

from overlayd.server import Server

__all__ = ["OVERLAY", "InProcDaemon", "serving", "setup_overlay"]

#: The ``setup_global_overlay`` arguments :func:`setup_overlay` sends by default.
OVERLAY: dict[str, Any] = {
    "deployment": "prod",
    "instance_id": "n1",
    "cluster_cidr": "10.240.0.0/16",
    "slice_cidr": "10.240.0.0/20",
    "wg_port": 51820,
    "nat_enabled": False,
}


class InProcDaemon:
    """Start, stop and restart an in-process daemon over one directory.

    :param root: The directory for the socket (``overlayd.sock``; keep the
        path short, a socket path must fit in 108 bytes) and, unless
        ``in_memory`` is set, the data directory (``data``).
    :param make_drivers: Returns the driver instances for the next start.
    :param settings: Configuration keys over the defaults (no drivers named,
        DNS off, no periodic health checks); ``engine`` merges into the
        engine defaults rather than replacing them.
    """

    def __init__(
        self,
        root: Path,
        *,
        make_drivers: Callable[[], Sequence[object]] | None = None,
        **settings: Any,
    ) -> None:
        self.root = root
        self.socket = root / "overlayd.sock"
        self.data_dir = root / "data"
        self.make_drivers = make_drivers
        self.config = self.configure(**settings)
        self.engine: Engine | None = None
        self.server: Server | None = None
        self._clients: list[AsyncClient] = []

    def configure(self, **settings: Any) -> DaemonConfig:
        """Set the configuration the next start uses."""
        engine = {"health_interval_secs": 0, **settings.pop("engine", {})}
        where: dict[str, Any] = (
            {}
            if settings.get("in_memory")
            else {"data_dir": settings.pop("data_dir", self.data_dir)}
        )
        self.config = DaemonConfig.model_validate(
            {
                "socket": self.socket,
                "drivers": [],
                "dns": {"enabled": False},
                "engine": engine,
                **where,
                **settings,
            }
        )
        return self.config

    async def start(self, *extra_drivers: object) -> InProcDaemon:
        """Start (again): ``extra_drivers`` first, then those ``make_drivers`` gives."""
        made = list(self.make_drivers()) if self.make_drivers is not None else []
        drivers = [*extra_drivers, *made]
        self.engine = Engine(self.config, drivers=drivers or None)
        await self.engine.start()
        self.server = Server(self.engine, self.config)
        try:
            await self.server.start()
        except BaseException:
            await self.engine.stop()
            self.engine = self.server = None
            raise
        return self

    async def client(self, request_timeout: float = 5.0) -> AsyncClient:
        """A connected client (``request_timeout`` per request), closed by :meth:`stop`."""
        client = AsyncClient(str(self.socket), timeout=request_timeout)
        self._clients.append(client)
        await client.connect()
        return client

    async def stop(self, grace: float = 5.0) -> None:
        """Close the clients, the server (``grace`` for requests in flight), the engine."""
        clients, self._clients = self._clients, []
        for client in clients:
            await client.close()
        if self.server is not None:
            await self.server.close(grace=grace)
            self.server = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None

    async def restart(self, *extra_drivers: object) -> InProcDaemon:
        await self.stop()
        return await self.start(*extra_drivers)


@asynccontextmanager
async def serving(
    root: Path,
    *,
    make_drivers: Callable[[], Sequence[object]] | None = None,
    **settings: Any,
) -> AsyncIterator[InProcDaemon]:
    """A started :class:`InProcDaemon`, stopped on the way out however the block ends."""
    daemon = InProcDaemon(root, make_drivers=make_drivers, **settings)
    try:
        yield await daemon.start()
    finally:
        await daemon.stop()


async def setup_overlay(client: AsyncClient, **overrides: Any) -> None:
    """``setup_global_overlay`` with :data:`OVERLAY`'s arguments, ``overrides`` over them."""
    await client.setup_global_overlay(**{**OVERLAY, **overrides})
