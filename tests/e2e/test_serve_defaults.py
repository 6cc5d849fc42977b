"""``overlayd serve`` without ``drivers``: the platform's real drivers, never the fake.

Run inside a network namespace the test creates (the real drivers reconcile
the links of the namespace they run in), with a temporary data directory.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlayd.client import Client

pytestmark = pytest.mark.privileged


@pytest.fixture
def netns(nsname: str) -> str:
    """A named namespace with ``lo`` up, removed afterwards (pyroute2's ``nsname``)."""
    return nsname


def test_serve_without_drivers_loads_the_platform_drivers(netns: str, root: Path) -> None:
    sock = root / "s.sock"
    log = root / "daemon.log"
    # The file names no drivers, only a driver setting: the platform's drivers
    # are still the ones loaded. (The daemon creates no device here.)
    (root / "overlayd.toml").write_text('[drivers.wireguard]\nbackend = "userspace"\n')
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", netns, sys.executable, "-m", "overlayd", "serve",
                "--socket", str(sock), "--data-dir", str(root / "data"), "--no-dns",
                "--config", str(root / "overlayd.toml"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with Client(str(sock), timeout=10) as client:
            hello = client.hello()
        assert [d.name for d in hello.drivers] == ["linux_bridge", "wireguard"]
        text = log.read_text()
        assert "drivers: linux_bridge, wireguard" in text
        assert f"data_dir: {root / 'data'}" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
