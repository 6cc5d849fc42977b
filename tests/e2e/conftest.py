"""An in-process overlayd for end-to-end tests that need to reach into the driver.

``inproc`` starts the real :class:`~overlayd.server.Server` over a real
:class:`~overlayd.engine.Engine` on a temporary Unix socket, with a
:class:`~overlayd_fake.driver.FakeDriver` instance the test can inspect and
steer (its host objects persist in a state file, so a restart finds them as
a real host would). Clients talk to it over the socket exactly as ZLayer does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import DaemonConfig
from overlayd.engine import Engine
from overlayd.server import Server
from overlayd_fake.driver import FakeDriver


class InProcDaemon:
    """Start, stop and restart an in-process daemon over one data directory."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        self.socket = root / "overlayd.sock"
        self.data_dir = root / "data"
        self.fake_state = root / "fake-host.json"
        self.config = self.configure(**settings)
        self.fake: FakeDriver | None = None
        self.engine: Engine | None = None
        self.server: Server | None = None

    def configure(self, **settings: Any) -> DaemonConfig:
        """Set the configuration the next start uses (``engine`` merges into the defaults)."""
        engine = {"health_interval_secs": 0, **settings.pop("engine", {})}
        self.config = DaemonConfig.model_validate(
            {
                "socket": self.socket,
                "data_dir": self.data_dir,
                "drivers": [],
                "dns": {"enabled": False},
                "engine": engine,
                **settings,
            }
        )
        return self.config

    async def start(self, *extra_drivers: object) -> InProcDaemon:
        """Start (again) with a fresh driver instance over the same host and state."""
        self.fake = FakeDriver(state_file=self.fake_state)
        self.engine = Engine(self.config, drivers=[*extra_drivers, self.fake])
        await self.engine.start()
        self.server = Server(self.engine, self.config)
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close(grace=5)
            self.server = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None

    async def restart(self, *extra_drivers: object) -> InProcDaemon:
        await self.stop()
        return await self.start(*extra_drivers)


@pytest.fixture
async def inproc() -> AsyncIterator[InProcDaemon]:
    """Name: inproc. Scope: function. An unstarted daemon; stopped even on failure."""
    # A short path: a Unix socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="od15-", dir="/tmp"))
    daemon = InProcDaemon(root)
    try:
        yield daemon
    finally:
        await daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
