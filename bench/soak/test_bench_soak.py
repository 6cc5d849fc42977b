"""Smoke test of the soak (run: pytest bench/soak); the soak itself is not a test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the soak uses Unix domain sockets", allow_module_level=True)


def _load() -> ModuleType:  # type: ignore[unreachable,unused-ignore]
    path = Path(__file__).parent / "run.py"
    spec = importlib.util.spec_from_file_location("soak_run", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_run", module)
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_runs_every_op_without_errors(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _load().run(clients=3, seconds=4.0, warmup=1.0, sample=1.0)
    assert figures["errors"] == 0
    assert figures["exit_code"] == 0
    assert figures["tracebacks"] == 0
    assert {"attach_container", "detach_container", "apply_peers", "map_port"} <= set(
        figures["ops"]
    )
    assert figures["rss_start"] > 0
    out = capsys.readouterr().out
    assert "after warm-up" in out
