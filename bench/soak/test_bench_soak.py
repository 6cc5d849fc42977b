"""Smoke test of the soak (run: pytest bench/soak); the soak itself is not a test."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the soak uses Unix domain sockets", allow_module_level=True)


def test_a_short_soak_runs_every_op_without_errors(
    load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    figures = load_bench("run.py").run(clients=3, seconds=4.0, warmup=1.0, sample=1.0)
    assert figures["errors"] == 0
    assert figures["exit_code"] == 0
    assert figures["tracebacks"] == 0
    assert {"attach_container", "detach_container", "apply_peers", "map_port"} <= set(
        figures["ops"]
    )
    assert figures["rss_start"] > 0
    out = capsys.readouterr().out
    assert "after warm-up" in out
