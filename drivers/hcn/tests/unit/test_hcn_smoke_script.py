"""The Windows smoke script's step logic, run against the simulator."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from types import ModuleType

import pytest

from overlayd.testing.scripts import load_script
from overlayd_hcn.simulator import SimulatedHcn
from overlayd_hcn.simulator import SimulatedService

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hcn_smoke.py"


def _load() -> ModuleType:
    return load_script(SCRIPT, "hcn_smoke")


def test_smoke_steps_pass_and_clean_up(
    service: SimulatedService, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = _load()
    code = smoke.run(ipaddress.ip_network("10.254.254.0/24"), lambda: SimulatedHcn(service=service))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out
    assert sum(line.startswith("PASS ") for line in out.splitlines()) == 13
    assert out.rstrip().endswith("RESULT PASS")
    assert service.live_handles == {}
    assert SimulatedHcn(service=service).enumerate_networks() == []


def test_smoke_reports_fail_and_still_deletes(
    service: SimulatedService, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = _load()
    service.fail_next("HcnModifyNamespace", 0x803B002E)
    code = smoke.run(ipaddress.ip_network("10.254.254.0/24"), lambda: SimulatedHcn(service=service))
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL attach endpoint to namespace" in out
    assert "PASS delete network" in out
    assert SimulatedHcn(service=service).enumerate_endpoints() == []


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows refusal")
def test_smoke_refuses_off_windows(capsys: pytest.CaptureFixture[str]) -> None:
    smoke = _load()
    sys_argv = sys.argv
    sys.argv = ["hcn_smoke.py"]
    try:
        assert smoke.main() == 2
    finally:
        sys.argv = sys_argv
    assert "runs only on Windows" in capsys.readouterr().err
