"""The rehearsal of the attach path (``overlayd.server.rehearsal``): it runs, it leaves no trace."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from overlayd.server import core as server_core
from overlayd.server.core import Server
from overlayd.server.rehearsal import rehearse
from overlayd.testing.inproc import serving
from overlayd.testing.inproc import setup_overlay
from overlayd_fake.driver import FakeDriver

#: The CNI plugin is a separate distribution; without it the plugin's part is skipped.
HAVE_CNI = importlib.util.find_spec("overlayd_cni") is not None


async def test_the_rehearsal_runs_the_plugins_add_to_a_cni_result() -> None:
    done = await rehearse()
    assert done.milliseconds > 0
    if not HAVE_CNI:
        assert done.exit_code is None
        return
    assert done.exit_code == 0, done.stdout
    result = json.loads(done.stdout)
    assert [(ip["address"], ip["gateway"]) for ip in result["ips"]] == [
        ("192.0.2.2/24", "192.0.2.1")
    ]
    assert {"name": "eth0", "sandbox": "/proc/self/ns/net", "mac": "02:00:00:00:00:01"} in [
        {k: i.get(k) for k in ("name", "sandbox", "mac")} for i in result["interfaces"]
    ]


def _traces(server: Server) -> tuple[Any, ...]:
    """What a request would leave behind: counts, metrics, attachments, leases, records."""
    engine = server.engine
    store = engine._store
    return (
        server.requests_served,
        engine.stats.requests.snapshot(),
        engine.stats.request_seconds.snapshot(),
        engine.stats.attach_seconds.snapshot(),
        dict(engine.attachments),
        engine.list_leases(None),
        store.load() if store is not None else None,
    )


async def test_the_warm_up_rehearses_and_leaves_no_trace(
    short_tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(short_tmp_path, make_drivers=lambda: [FakeDriver()]) as daemon:
        server = daemon.server
        assert server is not None
        client = await daemon.client()
        await setup_overlay(client)
        await client.setup_service_overlay("web")
        before = _traces(server)
        with caplog.at_level(logging.DEBUG, logger="overlayd.server"):
            await server.warm_up()
        assert "rehearsed the attach path" in caplog.text
        if HAVE_CNI:
            assert "(the plugin answered 0)" in caplog.text
        assert _traces(server) == before


async def test_a_failing_rehearsal_is_logged_and_the_daemon_serves_on(
    short_tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise RuntimeError("no rehearsal today")

    monkeypatch.setattr(server_core, "rehearse", broken)
    async with serving(
        short_tmp_path, make_drivers=lambda: [FakeDriver()], in_memory=True
    ) as daemon:
        server = daemon.server
        assert server is not None
        with caplog.at_level(logging.DEBUG, logger="overlayd.server"):
            await server.warm_up()
        assert "rehearsing the attach path failed: no rehearsal today" in caplog.text
        assert (await (await daemon.client()).hello()).server_version
