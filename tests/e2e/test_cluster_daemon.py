"""End to end: two ``overlayd serve`` daemons (fake driver) join through a real etcd.

No IPC call sets anything up: the ``[cluster]`` table alone makes each daemon
claim a slice, set up its global overlay and add the other as a peer.
``overlayctl cluster`` (table and ``--json``) shows both; a daemon without
``[cluster]`` answers the op with an error.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.testing.daemon import running_daemon

pytest.importorskip("etcd3gw", reason="cluster mode needs the `cluster` extra (etcd3gw)")

_CTL = "import sys; from overlayd.cli import overlayctl_main; sys.exit(overlayctl_main())"

CONFIG = """
[drivers]
enabled = ["fake"]

[dns]
enabled = false

[cluster]
endpoints = ["{url}"]
name = "{name}"
advertise = "127.0.0.1"
cluster_cidr = "10.244.0.0/16"
ttl = 3
"""


def ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CTL, "--socket", str(sock), "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def daemons(etcd_server: Any) -> Iterator[Callable[[str, bool], Path]]:
    root = Path(tempfile.mkdtemp(prefix="ocl-", dir="/tmp"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)

        def start(name: str, cluster: bool = True) -> Path:
            workdir = root / name
            workdir.mkdir()
            text = CONFIG.format(url=etcd_server.url, name=name)
            config = text if cluster else text.split("[cluster]")[0]
            sock = workdir / "overlayd.sock"
            stack.enter_context(running_daemon(workdir, config, socket_path=sock))
            return sock

        yield start


def cluster_json(sock: Path) -> Any:
    out = ctl(sock, "--json", "cluster")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_daemons_join_and_overlayctl_cluster_shows_them(daemons: Any) -> None:
    a = daemons("alpha")
    b = daemons("beta")
    wait_until(
        lambda: all(len(cluster_json(s)["nodes"]) == 2 for s in (a, b)), 20, "both to see both"
    )
    view = cluster_json(a)
    assert view["name"] == "alpha" and view["connected"] is True
    nodes = {n["name"]: n for n in view["nodes"]}
    assert nodes["alpha"]["local"] is True and nodes["beta"]["local"] is False
    assert nodes["alpha"]["slices"] != nodes["beta"]["slices"]
    assert 0 < nodes["beta"]["lease_ttl_secs"] <= 3
    assert nodes["beta"]["endpoint"] == "127.0.0.1:51820"
    # the peer was programmed with no IPC call: status shows it
    status = json.loads(ctl(a, "--json", "status").stdout)
    assert [p["public_key"] for p in status["peers"]] == [nodes["beta"]["public_key"]]
    assert status["slice_cidr"] == nodes["alpha"]["slices"][0]
    table = ctl(b, "cluster")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "connected to etcd" in lines[0]
    assert lines[1].split() == ["NAME", "SLICE", "ENDPOINT", "PUBLIC", "KEY", "HANDSHAKE", "LEASE"]
    assert any(line.startswith("beta *") for line in lines[2:])
    assert any(line.startswith("alpha ") for line in lines[2:])


def test_cluster_op_without_cluster_mode_is_an_error(daemons: Any) -> None:
    sock = daemons("solo", False)
    out = ctl(sock, "cluster")
    assert out.returncode == 1
    assert "cluster mode is not enabled on this node" in out.stderr
