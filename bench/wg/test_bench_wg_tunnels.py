"""Smoke test of the tunnel comparison's helpers (run: pytest bench/wg)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from overlayd.testing.scripts import load_script

tunnels = load_script(Path(__file__).with_name("tunnels.py"), "wg_tunnels")


def test_sample_divides_tunnel_cpu_by_gigabits_carried() -> None:
    out = json.dumps(
        {
            "end": {
                "sum_received": {"bits_per_second": 5e8, "bytes": 312_500_000},
                "sum_sent": {"retransmits": 12},
            }
        }
    )
    tick = os.sysconf("SC_CLK_TCK")
    sample = tunnels.sample_from(
        out,
        5.1,
        6 * tick,
        tick,
        {"InDatagrams": 100, "RcvbufErrors": 5},
        {"InDatagrams": 1000, "RcvbufErrors": 105},
    )
    assert sample.gbps == pytest.approx(0.5)
    assert sample.gbit == pytest.approx(2.5)
    assert sample.cpu_per_gbit == pytest.approx(6 / 2.5)
    assert sample.softirq_per_gbit == pytest.approx(1 / 2.5)
    assert sample.drop_share == pytest.approx(100 / 1000)
    assert sample.retransmits == 12


def test_cpu_ticks_of_a_busy_child_grow() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\ninput()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = 50
        while tunnels.cpu_ticks(child.pid) < 0.2 * os.sysconf("SC_CLK_TCK") and deadline:
            subprocess.run(["sleep", "0.1"], check=True)
            deadline -= 1
        assert tunnels.cpu_ticks(child.pid) >= 0.2 * os.sysconf("SC_CLK_TCK")
    finally:
        child.kill()
        child.wait(5)


@pytest.mark.skipif(shutil.which("nebula") is None, reason="nebula is not installed")
@pytest.mark.parametrize(("buffers", "cipher"), [(None, "aes"), (10 << 20, "chachapoly")])
def test_nebula_accepts_the_generated_config(
    tmp_path: Path, buffers: int | None, cipher: str
) -> None:
    for argv in (
        ["ca", "-name", "t",
         "-out-crt", str(tmp_path / "ca.crt"), "-out-key", str(tmp_path / "ca.key")],
        ["sign", "-ca-crt", str(tmp_path / "ca.crt"), "-ca-key", str(tmp_path / "ca.key"),
         "-name", "a", "-ip", "10.242.30.1/24",
         "-out-crt", str(tmp_path / "a.crt"), "-out-key", str(tmp_path / "a.key")],
    ):  # fmt: skip
        subprocess.run(["nebula-cert", *argv], check=True, capture_output=True)
    conf = tmp_path / "a.yml"
    conf.write_text(
        tunnels.nebula_config(
            tmp=tmp_path,
            name="a",
            ifname="owgbtest0",
            port=4242,
            peer_overlay="10.242.30.2",
            peer_underlay="10.241.0.2",
            socket_buffer=buffers,
            cipher=cipher,
        )
    )
    done = subprocess.run(
        ["nebula", "-test", "-config", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
