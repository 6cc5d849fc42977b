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
    bench = load_bench("run.py")
    loops = bench.available_loops()
    results = bench.run(0.3, [1, 2], attach=True)
    assert [(r["clients"], r["loop"]) for r in results] == [(n, lp) for n in (1, 2) for lp in loops]
    for r in results:
        assert r["echo_rps"] > 0
        assert r["daemon_rps"] > 0
        assert r["ratio"] == pytest.approx(r["daemon_rps"] / r["echo_rps"])
        assert 0 < r["daemon_p50_us"] <= r["daemon_p99_us"]
        # attach/detach pairs ran without an err answer (an err stops the run)
        assert r["attach_ops"] > 0 and 0 < r["attach_p50_us"] <= r["attach_p99_us"]
    out = capsys.readouterr().out
    assert "x the floor" in out
    assert "overlayd asyncio" in out and "attach/detach" in out


def test_attach_detach_frames_pair_up_per_client(load_bench: Callable[[str], ModuleType]) -> None:
    frames = [load_bench("run.py").attach_detach(3, n) for n in range(4)]
    assert b'"op":"attach_container"' in frames[0] and b"bench-3-0" in frames[0]
    assert b'"op":"detach_container"' in frames[1] and b"bench-3-0" in frames[1]
    assert b"bench-3-1" in frames[2] and b"bench-3-1" in frames[3]
