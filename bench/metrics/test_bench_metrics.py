"""Smoke test of the metrics benchmark (run: pytest bench/metrics); the benchmark is
run by hand (bench/metrics/run.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the benchmark's daemon serves a Unix socket", allow_module_level=True)

pytest.importorskip("prometheus_client")


def _load() -> ModuleType:  # type: ignore[unreachable,unused-ignore]
    path = Path(__file__).parent / "run.py"
    spec = importlib.util.spec_from_file_location("metrics_bench_run", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("metrics_bench_run", module)
    spec.loader.exec_module(module)
    return module


def test_a_small_run_reports_every_phase(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _load().run(attaches=30, rounds=3, interval=0.05)
    assert figures["exit_code"] == 0
    for name in ("quiet", "scraped", "flood"):
        assert figures[name]["all"]["n"] == 90
        assert figures[name]["all"]["max_ms"] >= figures[name]["all"]["p50_ms"] > 0
    assert figures["quiet"]["scrapes"] == 0 and figures["quiet"]["overlapping"] is None
    assert figures["flood"]["scrapes"] > figures["scraped"]["scrapes"] > 0
    assert figures["flood"]["overlapping"]["n"] > 0
    out = capsys.readouterr().out
    assert "overlapping a scrape" in out and "quiet" in out
