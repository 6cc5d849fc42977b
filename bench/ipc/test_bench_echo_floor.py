"""Smoke test of the IPC floor benchmark (run: pytest bench/ipc)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the echo floor uses Unix domain sockets", allow_module_level=True)


def _load() -> ModuleType:  # type: ignore[unreachable,unused-ignore]
    path = Path(__file__).with_name("echo_floor.py")
    spec = importlib.util.spec_from_file_location("echo_floor", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("echo_floor", module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


async def test_bench_measure_counts_round_trips(tmp_path: Path) -> None:
    echo_floor = _load()
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
