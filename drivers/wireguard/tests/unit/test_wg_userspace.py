from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from overlayd.errors import Conflict
from overlayd.errors import DeviceError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.userspace import UserspaceBackend

from .conftest import FAKE_CMD
from .conftest import RecordingLinks
from .conftest import fake_backend
from .conftest import killed_and_restarted
from .conftest import wait_until


@pytest.fixture
def links() -> RecordingLinks:
    return RecordingLinks()


@pytest.fixture
def backend(sock_dir: Path, links: RecordingLinks) -> Iterator[UserspaceBackend]:
    b = fake_backend(sock_dir, links, start_timeout=10.0)
    try:
        yield b
    finally:
        b.close()
        b.delete_all()


def test_ensure_device_starts_process_and_configures(
    backend: UserspaceBackend, links: RecordingLinks, client: UapiClient
) -> None:
    key = PrivateKey.generate()
    state = backend.ensure_device(
        "wgu0", private_key=key, listen_port=51820, mtu=1380, addresses=["10.98.0.1/24"]
    )
    assert state.private_key == key
    assert state.public_key == key.public_key()
    assert state.listen_port == 51820
    assert links.configured == [("wgu0", 1380, ("10.98.0.1/24",), None)]
    pid = backend.pid("wgu0")
    assert pid is not None
    os.kill(pid, 0)  # alive
    assert client.get("wgu0") == state


def test_ensure_device_is_idempotent(backend: UserspaceBackend, links: RecordingLinks) -> None:
    key = PrivateKey.generate()
    backend.ensure_device("wgu0", private_key=key, listen_port=1000)
    pid = backend.pid("wgu0")
    backend.apply("wgu0", SetRequest(peers=(PeerOp(public_key=generate_keypair()[1]),)))
    state = backend.ensure_device("wgu0", private_key=key, listen_port=1001)
    assert backend.pid("wgu0") == pid
    assert state.listen_port == 1001
    assert len(state.peers) == 1  # peers survive a re-ensure
    assert len(links.configured) == 2


def test_ensure_device_in_other_namespace_conflicts(backend: UserspaceBackend) -> None:
    backend.ensure_device("wgu0", private_key=PrivateKey.generate())
    with pytest.raises(NotFound, match="network namespace"):
        backend.ensure_device("wgu0", private_key=PrivateKey.generate(), netns="owg-none-such")
    dev = backend._devices["wgu0"]
    dev.config = replace(dev.config, netns="other")  # simulate a device in another netns
    with pytest.raises(Conflict, match="already runs in netns other"):
        backend.ensure_device("wgu0", private_key=PrivateKey.generate())


def test_delete_device_stops_process_and_removes_socket(
    backend: UserspaceBackend, sock_dir: Path
) -> None:
    backend.ensure_device("wgu0", private_key=PrivateKey.generate())
    pid = backend.pid("wgu0")
    assert pid is not None
    assert backend.delete_device("wgu0") is True
    assert not (sock_dir / "wgu0.sock").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert backend.delete_device("wgu0") is False


def test_delete_device_kills_a_process_ignoring_sigterm(
    sock_dir: Path, links: RecordingLinks, tmp_path: Path
) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "from overlayd_wireguard.fakeuapi import FakeUapiServer\n"
        "import threading\n"
        f"FakeUapiServer({str(sock_dir)!r}, sys.argv[-1]).start()\n"
        "threading.Event().wait()\n"
    )
    b = UserspaceBackend(
        command=(sys.executable, str(script)),
        socket_dir=sock_dir,
        links=links,
        stop_timeout=0.5,
        supervise=False,
    )
    b.ensure_device("wgu1", private_key=PrivateKey.generate())
    pid = b.pid("wgu1")
    assert pid is not None
    assert b.delete_device("wgu1") is True
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (sock_dir / "wgu1.sock").exists()


def test_supervisor_restarts_dead_process_and_reapplies_config(
    sock_dir: Path, links: RecordingLinks
) -> None:
    restarted: list[str] = []
    b = fake_backend(sock_dir, links, on_restart=restarted.append)
    try:
        key = PrivateKey.generate()
        b.ensure_device("wgu2", private_key=key, listen_port=4242, addresses=["10.98.0.1/24"])
        peer = generate_keypair()[1]
        b.apply(
            "wgu2",
            SetRequest(
                fwmark=5,
                peers=(
                    PeerOp(
                        public_key=peer,
                        endpoint="192.0.2.2:51820",
                        persistent_keepalive_interval=25,
                        allowed_ips=("10.98.0.2/32",),
                    ),
                ),
            ),
        )
        before = b.get("wgu2")
        killed_and_restarted(b, "wgu2")
        after = b.get("wgu2")
        assert after == before
        assert after.fwmark == 5
        wait_until(lambda: restarted == ["wgu2"])
        # link settings re-applied on the new TUN
        assert links.configured[-1] == ("wgu2", 1420, ("10.98.0.1/24",), None)
    finally:
        b.close()
        b.delete_all()


def test_supervisor_restarts_when_socket_is_deleted(
    backend: UserspaceBackend, sock_dir: Path
) -> None:
    backend.ensure_device("wgu3", private_key=PrivateKey.generate(), listen_port=7)
    (sock_dir / "wgu3.sock").unlink()  # the fake exits like wireguard-go does
    wait_until(lambda: backend.restarts("wgu3") == 1)
    assert backend.get("wgu3").listen_port == 7


def test_apply_restarts_a_dead_process_first(sock_dir: Path, links: RecordingLinks) -> None:
    b = UserspaceBackend(
        command=(*FAKE_CMD, "--socket-dir", str(sock_dir)),
        socket_dir=sock_dir,
        links=links,
        supervise=False,
    )
    try:
        b.ensure_device("wgu4", private_key=PrivateKey.generate())
        pid = b.pid("wgu4")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        proc = b._devices["wgu4"].proc
        assert proc is not None
        proc.wait(5)
        b.apply("wgu4", SetRequest(listen_port=99))
        assert b.restarts("wgu4") == 1
        assert b.get("wgu4").listen_port == 99
    finally:
        b.delete_all()


def test_start_failure_reports_process_output(sock_dir: Path, links: RecordingLinks) -> None:
    b = UserspaceBackend(
        command=(
            sys.executable,
            "-c",
            "import sys; print('no TUN for you'); sys.exit(1)",
        ),
        socket_dir=sock_dir,
        links=links,
        supervise=False,
    )
    with pytest.raises(DeviceError, match="exited with code 1 during start-up: no TUN for you"):
        b.ensure_device("wgu5", private_key=PrivateKey.generate())
    with pytest.raises(NotFound):
        b.pid("wgu5")  # a failed start is not recorded


def test_missing_command_is_clear_error(sock_dir: Path, links: RecordingLinks) -> None:
    b = UserspaceBackend(command=("/nonexistent/wireguard-go",), socket_dir=sock_dir, links=links)
    with pytest.raises(DeviceError, match=r"cannot start.*installed"):
        b.ensure_device("wgu6", private_key=PrivateKey.generate())


def test_adopts_a_running_process(
    sock_dir: Path, links: RecordingLinks, fake_server: object
) -> None:
    # fake_server serves wgt0 in-process: a device overlayd did not start.
    b = UserspaceBackend(
        command=("/nonexistent",), socket_dir=sock_dir, links=links, supervise=False
    )
    key = PrivateKey.generate()
    state = b.ensure_device("wgt0", private_key=key, listen_port=3)
    assert state.private_key == key
    assert b.pid("wgt0") is None
    assert b.delete_device("wgt0") is True
    assert not (sock_dir / "wgt0.sock").exists()
    assert links.deleted == ["wgt0"]


def test_start_timeout_is_bounded(sock_dir: Path, links: RecordingLinks) -> None:
    b = UserspaceBackend(
        command=(sys.executable, "-c", "import time; time.sleep(30)"),
        socket_dir=sock_dir,
        links=links,
        start_timeout=0.5,
        stop_timeout=1.0,
        supervise=False,
    )
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="did not open"):
        b.ensure_device("wgu7", private_key=PrivateKey.generate())
    assert time.monotonic() - t0 < 5


def test_a_bad_interface_name_starts_no_process(
    backend: UserspaceBackend, links: RecordingLinks, sock_dir: Path
) -> None:
    for call in (
        lambda: backend.ensure_device("a/b", private_key=PrivateKey.generate()),
        lambda: backend.delete_device("../x"),
        lambda: backend.apply("bad name", SetRequest()),
    ):
        with pytest.raises(InvalidRequest, match="interface name"):
            call()
    assert links.configured == [] and links.deleted == []
    assert list(sock_dir.iterdir()) == []
