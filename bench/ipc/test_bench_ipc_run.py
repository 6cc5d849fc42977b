"""Smoke test of the daemon-vs-floor benchmark (run: pytest bench/ipc)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the benchmark uses Unix domain sockets", allow_module_level=True)


def test_bench_compares_daemon_status_with_the_floor(
    load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    results = load_bench("run.py").run(0.3, [1, 2])
    assert [r["clients"] for r in results] == [1, 2]
    for r in results:
        assert r["echo_rps"] > 0
        assert r["daemon_rps"] > 0
        assert r["ratio"] == pytest.approx(r["daemon_rps"] / r["echo_rps"])
        assert 0 < r["daemon_p50_us"] <= r["daemon_p99_us"]
    out = capsys.readouterr().out
    assert "daemon/floor throughput ratio" in out
    assert "overlayd" in out
