"""An in-process overlayd for end-to-end tests that need to reach into the driver.

``inproc`` starts the real :class:`~overlayd.server.Server` over a real
:class:`~overlayd.engine.Engine` on a temporary Unix socket, with a
:class:`~overlayd_fake.driver.FakeDriver` instance the test can inspect and
steer (its host objects persist in a state file, so a restart finds them as
a real host would). Clients talk to it over the socket exactly as ZLayer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.testing import inproc as inproc_module
from overlayd_fake.driver import FakeDriver


class InProcDaemon(inproc_module.InProcDaemon):
    """The shared in-process daemon, on a fake driver the test can steer (``fake``)."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.fake_state = root / "fake-host.json"
        self.fake: FakeDriver | None = None
        super().__init__(root, make_drivers=self._fake_driver, **settings)

    def _fake_driver(self) -> list[object]:
        self.fake = FakeDriver(state_file=self.fake_state)
        return [self.fake]


@pytest.fixture
def root(short_tmp_path: Path) -> Path:
    """Name: root. Scope: function. A directory short enough for a daemon's socket."""
    return short_tmp_path


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


class AgentConnection:
    """A client that behaves like ZLayer's ``OverlaydClient``.

    One connection for everything; a request is written, then frames are read
    until the response with the request's ``id`` arrives, and nothing is read
    between requests. Any event frame read on the way is kept in ``events``
    (ZLayer logs and drops them); a connection that never subscribed must see
    none.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 1
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, path: Path) -> AgentConnection:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request`` (the object under ``"request"``); return the response object."""
        frame_id = self.next_id
        self.next_id += 1
        body = json.dumps(
            {"frame": "request", "id": frame_id, "request": request}, separators=(",", ":")
        ).encode()
        self.writer.write(struct.pack("<I", len(body)) + body)
        await self.writer.drain()
        while True:
            (length,) = struct.unpack("<I", await self.reader.readexactly(4))
            frame = json.loads(await self.reader.readexactly(length))
            if frame["frame"] == "event":
                self.events.append(frame)
                continue
            if frame["frame"] == "response" and frame["id"] == frame_id:
                return dict(frame["response"])

    async def ok(self, request: dict[str, Any]) -> dict[str, Any]:
        """:meth:`call`, failing the test on an ``err`` answer."""
        response = await self.call(request)
        assert response["result"] != "err", (request, response)
        return response

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
