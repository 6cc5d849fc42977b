"""Smoke test of the daemon-vs-floor benchmark (run: pytest bench/ipc)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the benchmark uses Unix domain sockets", allow_module_level=True)


def _load() -> ModuleType:  # type: ignore[unreachable,unused-ignore]
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    spec = importlib.util.spec_from_file_location("ipc_run", here / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ipc_run", module)
    spec.loader.exec_module(module)
    return module


def test_bench_compares_daemon_status_with_the_floor(capsys: pytest.CaptureFixture[str]) -> None:
    results = _load().run(0.3, [1, 2])
    assert [r["clients"] for r in results] == [1, 2]
    for r in results:
        assert r["echo_rps"] > 0
        assert r["daemon_rps"] > 0
        assert r["ratio"] == pytest.approx(r["daemon_rps"] / r["echo_rps"])
        assert 0 < r["daemon_p50_us"] <= r["daemon_p99_us"]
    out = capsys.readouterr().out
    assert "daemon/floor throughput ratio" in out
    assert "overlayd" in out
