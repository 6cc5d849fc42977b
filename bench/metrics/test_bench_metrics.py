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


def test_a_small_run_reports_both_phases(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _load().run(attaches=40, rounds=2)
    assert figures["exit_code"] == 0
    assert figures["quiet"]["samples"] == figures["scraped"]["samples"] == 80
    assert figures["quiet"]["scrapes"] == 0
    assert figures["scraped"]["scrapes"] > 0
    assert figures["scraped"]["p99_ms"] >= figures["scraped"]["p50_ms"] > 0
    out = capsys.readouterr().out
    assert "scraping adds" in out and "p99" in out
