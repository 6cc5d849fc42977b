"""``overlayd serve`` without ``drivers``: the platform's real drivers, never the fake.

Run inside a network namespace the test creates (the real drivers reconcile
the links of the namespace they run in), with a temporary data directory.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.client import Client

pytestmark = pytest.mark.privileged


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"od15-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="od15-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
