"""A detach on a full data disk: old state or new, never half (a real, small tmpfs).

The data directory is a 4 MiB tmpfs that the test fills; the fake driver keeps
its host objects in a file elsewhere, so "the host" is not affected by the
full disk, only the daemon's store is.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import raw_connect
from overlayd.testing.daemon import recv_frame
from overlayd.testing.daemon import send_request
from overlayd.testing.daemon import start_daemon
from overlayd_fake.driver import FakeDriver

pytestmark = [pytest.mark.privileged]


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ofd-", dir="/tmp"))
    data = path / "data"
    data.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(data)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(data)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _call(daemon: DaemonProcess, request: dict[str, Any]) -> dict[str, Any]:
    with raw_connect(daemon.socket, timeout=30) as s:
        send_request(s, 1, request)
        frame = recv_frame(s)
    assert frame is not None
    response: dict[str, Any] = frame["response"]
    return response


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as f, pytest.raises(OSError, match="No space left") as info:  # noqa: PT012 - a loop
        while True:
            f.write(chunk)
            f.flush()
    assert info.value.errno == errno.ENOSPC
    return filler


def _host_attachments(root: Path) -> set[str]:
    # The state file and its journal, read as the driver reads them at start.
    return set(FakeDriver(state_file=root / "fake-host.json").host.attachments)


def test_a_detach_on_a_full_disk_leaves_old_state_or_new(root: Path) -> None:
    config = (
        '[drivers]\nenabled = ["fake"]\n'
        f'[drivers.fake]\nstate_file = "{root / "fake-host.json"}"\n'
        "[dns]\nenabled = false\n[engine]\nhealth_interval_secs = 0\n"
    )
    daemon = start_daemon(root, config)
    try:
        setup = {
            "op": "setup_global_overlay",
            "deployment": "fd",
            "instance_id": "n1",
            "cluster_cidr": "10.200.0.0/16",
            "slice_cidr": "10.200.0.0/20",
            "wg_port": 51820,
            "nat_enabled": False,
        }
        assert _call(daemon, setup)["result"] == "bridge_name"
        web = {"op": "setup_service_overlay", "service": "web", "mode": "shared"}
        assert _call(daemon, web)["result"] == "service_overlay"
        for pid in (101, 102):
            attach = {
                "op": "attach_container",
                "handle": {"platform": "linux_pid", "pid": pid},
                "service": "web",
                "join_global": False,
            }
            assert _call(daemon, attach)["result"] == "attached"
        filler = _fill(root / "data")
        detach = {"op": "detach_container", "handle": {"platform": "linux_pid", "pid": 101}}
        answer = _call(daemon, detach)
        assert answer["result"] == "err", answer
        listed = {
            a["handle"]["pid"]: a for a in _call(daemon, {"op": "list_attachments"})["attachments"]
        }
        on_host = "linux_pid:101" in _host_attachments(root)
        if listed[101].get("detaching"):
            # The intent was stored before the disk filled up: the host side is
            # gone and the record says so.
            assert not on_host
            assert "stays recorded as detaching" in answer["message"]
        else:
            # Nothing could be stored: nothing was touched.
            assert on_host, "the record says attached, but the container was unplugged"
            assert "changed nothing" in answer["message"]
        assert "linux_pid:102" in _host_attachments(root)
        # Space again: the detach completes, and the store and the host agree.
        filler.unlink()
        assert _call(daemon, detach)["result"] == "ok"
        assert _host_attachments(root) == {"linux_pid:102"}
        listed = {
            a["handle"]["pid"]: a for a in _call(daemon, {"op": "list_attachments"})["attachments"]
        }
        assert set(listed) == {102}
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
