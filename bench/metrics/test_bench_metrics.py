"""Smoke test of the metrics benchmark (run: pytest bench/metrics); the benchmark is
run by hand (bench/metrics/run.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest

if sys.platform == "win32":
    pytest.skip("the benchmark's daemon serves a Unix socket", allow_module_level=True)

pytest.importorskip("prometheus_client")


def test_a_small_run_reports_every_phase(
    load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    figures = load_bench("run.py").run(attaches=30, rounds=3, interval=0.05)
    assert figures["exit_code"] == 0
    for name in ("quiet", "scraped", "flood"):
        assert figures[name]["all"]["n"] == 90
        assert figures[name]["all"]["max_ms"] >= figures[name]["all"]["p50_ms"] > 0
    assert figures["quiet"]["scrapes"] == 0 and figures["quiet"]["overlapping"] is None
    assert figures["flood"]["scrapes"] > figures["scraped"]["scrapes"] > 0
    assert figures["flood"]["overlapping"]["n"] > 0
    out = capsys.readouterr().out
    assert "overlapping a scrape" in out and "quiet" in out
