"""Smoke test of the IPC floor benchmark (run: pytest bench/ipc)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the echo floor uses Unix domain sockets", allow_module_level=True)


async def test_bench_measure_counts_round_trips(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    echo_floor = load_bench("echo_floor.py")
    path = str(tmp_path / "echo.sock")
    ready = asyncio.Event()
    server = asyncio.create_task(echo_floor.serve_echo(path, ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        result = await echo_floor.measure_async(path, b"x" * 100, 2, 0.2)
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
    assert result.clients == 2
    assert result.payload_bytes == 100
    assert result.round_trips > 10
    assert 0 < result.p50_us <= result.p99_us
