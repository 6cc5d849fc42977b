"""Smoke test of the footprint benchmark (run: pytest bench/footprint), run small."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest

if sys.platform != "linux":
    pytest.skip("the footprint reads /proc/<pid>/status", allow_module_level=True)


def test_a_small_footprint_fills_restarts_and_reports(
    load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    figures = load_bench("run.py").run(200, 200, 2_000, nebula=False)
    assert figures["tracebacks"] == 0
    assert figures["exit_code"] == 0
    assert figures["exit_code_restarted"] == 0
    # the restarted daemon holds what was put in
    assert figures["attachments_after"] == 200
    assert figures["peers_after"] == 200
    assert figures["dns_sample"] > 0
    # plausible figures: a Python daemon is tens of MiB, and it starts in seconds
    for key in ("rss_empty", "rss_filled", "hwm_filled", "rss_restarted"):
        assert 10 * 2**20 < figures[key] < 2**30, key
    assert figures["hwm_filled"] >= figures["rss_filled"]
    assert 0 < figures["startup_s"] < 60
    assert 0 < figures["startup_answer_s"] <= figures["startup_s"]
    assert 0 < figures["startup_cpu_s"] < 60
    assert 0 < figures["pace_s"] < 60
    assert figures["fill_attach_per_s"] > 0
    assert figures["fill_names_per_s"] > 0
    out = capsys.readouterr().out
    assert "start-up with the state" in out
    assert "< 300 MiB" in out
    assert "machine pace (reference)" in out
